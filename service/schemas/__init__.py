"""JSON Schemas from task files and requests: checked by the draft each declares, resolved only inside
themselves, compiled once, evaluated under a time budget. One job a module:

    drafts     which draft a schema declares (`$schema`), and what in it means otherwise in 2020-12
    shape      size, depth, property count, repetition bounds: the limits an ad-hoc schema must keep
    walk       the subschemas of a schema as its draft defines them (what the checks traverse)
    refs       every reference resolved inside the document (nothing retrieved); no cycle that never descends
    patterns   `pattern` & co. matched by the `regex` module with a timeout, in place of jsonschema's `re`
    budget     a per-thread deadline, and validators whose every keyword checks it
    compiled   a checked, compiled schema; validation of an answer; the byte-bounded cache of ad-hoc schemas
    problems   the one error: a schema the service will not use

Nothing here is async: the pipeline runs the costly parts off the event loop (`service.pipeline.checks`).
Import what you need from the modules.
"""
