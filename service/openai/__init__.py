"""OpenAI-compatible routes: chat and text completions (streaming too), models, moderations.

An app that speaks the OpenAI protocol adopts Assay by changing its base URL.
Requests become ordinary guarded generation jobs (the same queue, pipeline
and job store as ``POST /v1/generations``); Assay's findings, scores and
policy identity ride along in an ``assay`` field that standard clients ignore.

* ``schema``: the wire models (requests, responses, the error shape).
* ``mapping``: pure functions between the wire models and Assay's contracts.
* ``streaming``: Server-Sent Events from a job's published text.
* ``routes``: the controller, with OpenAI's error shape on its routes only.
"""
