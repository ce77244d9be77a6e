"""The logic of the admin commands (``status``, ``reset``, ``verify``); ``workers/cli.py`` only prints."""
