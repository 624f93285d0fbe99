"""The headless-browser player: Playwright drives Chromium running dash.js with the controller-backed ABR rule;
the session runner (`netllm stream`) and trace-set replays (`netllm replay`)."""
