"""The data studio's Django side: sources, curation runs, recipe tools, audit and datasheets.

The curation itself is :mod:`training.core.curate` (pure Python); this package stores sources and
runs (:mod:`training.models.datastudio`), runs recipes as Huey tasks in a child process
(:mod:`.tasks`, :mod:`.child`), streams progress to ``/ws/curation/<id>/`` and serves the API and
pages under ``/api/datastudio/`` and ``/data/``. See ``docs/data-studio.md``.
"""
