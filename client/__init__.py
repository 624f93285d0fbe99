"""The headless-browser player: Playwright drives Chromium running dash.js with the controller-backed ABR
rule; the session runner (`netllm stream`) and trace-set replays (`netllm replay`).

- `client/static/`: the player page (index.html, player.js, abr_rule.js), served by the DASH server under
  /player/; its query string configures a session (see player.js);
- `client.player`: the player process (`python -m client.player --spec SPEC.json`), one session per process;
- `client.session`: what every live session shares (page URL, player command, `finalize_session`);
- `client.stream`: `netllm stream`, one session on loopback or (with `--trace`) on an emulated link.
"""
