"""Cluster job scheduling (CJS) in the decision service: the scheduling-event schema (`observation`),
fixed-size encodings for learned schedulers (`encoding`), the policy interface, registry and baselines
(`policies`) and the HTTP plug-in (`service`, `POST /v1/cjs/schedule`)."""
