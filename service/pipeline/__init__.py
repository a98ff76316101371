"""The extraction pipeline, one job a module, top to bottom as a request goes through it:

    extractor   task, route, fallback chain; the one entry point (`Extractor.extract`)
    observe     metrics and logs of a finished request (counted once, whatever the outcome)
    limits      text limits: characters, tokens with the backend's tokenizer, the context window
    attempts    prompt -> call -> parse -> validate -> re-ask, budget, PII, for one backend
    structured  what is sent as `response_format` (the backend's engine profile decides)
    checks      ad-hoc schemas checked and compiled, answers parsed and validated: off the loop when costly
    resilient   a Backend wrapped in retries, a circuit breaker and a bulkhead (the same interface)
    spend       what a request consumed, one value that adds up, carried by results and errors
    failures    backend errors and exhausted attempts as API errors

It knows nothing of FastAPI; errors are `service.errors` types. Import what you need from the modules.
"""
