"""The local model stack: this machine's hardware, the base model cache, the managed inference server."""
