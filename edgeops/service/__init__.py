"""The central service (``edgeops serve``): :class:`~edgeops.service.server.Service`.

Modules: ``server`` (the service and its threads), ``intake`` (messages in, checked, stored,
acknowledged), ``evaluation`` (the drift evaluation queue), ``engine`` (drift verdicts and
alerts), ``baselines`` (registered baselines), ``limits`` (rate limits), ``workers``
(supervision), ``storage`` (all of its SQL, one concern per module), ``rollouts`` and
``bundles`` (deployments); the REST API: ``api`` (routes), ``api_types`` (their bodies),
``api_docs`` (OpenAPI, ``/docs``), ``api_server`` (uvicorn), ``auth`` (tokens, signed bundle
links); ``report`` (the CLI's client and tables), ``config``; ``dashboard``, ``views`` and
``web/`` (the web dashboard), ``metrics`` (Prometheus); ``rollout_policy`` (the pure part of
staged rollouts) and ``pki`` (a small certificate authority for the fleet).
"""
