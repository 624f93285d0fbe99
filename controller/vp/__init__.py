"""Viewport prediction (VP) task of the decision service: metrics, policies (baselines and the registry that
the learned models plug into) and the `POST /v1/vp/predict` route (`controller.vp.service`)."""
