"""The node process: wire codec, dispatch, permissions, storage, index, server, client, CLI."""
