"""The project's own labelled prompts: YAML sources (``sources/``) and the builder that writes ``prompts.jsonl``.

``build`` reads the sources, ``generated`` and ``traffic`` the two kinds of source file, and
``items`` what they share; see README.md in this folder.
"""
