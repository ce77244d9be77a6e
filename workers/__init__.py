"""The processes of pgsource: supervisor, poll and CDC workers, the Iggy publisher, and the CLI.

``workers`` imports ``pgsource`` (the library); ``pgsource`` never imports ``workers``.
"""
