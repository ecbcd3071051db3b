"""Per-node values, Jinja2 templates and age-encrypted secrets of the fleet repository.

The daemon side (:mod:`agent.render.source`, :mod:`agent.render.seal`) stays light: the
template engine and the age library are imported only by a short-lived child
(:mod:`agent.render.engine`), as the signature check does, so neither costs the daemon
resident memory and a hostile template cannot crash it.
"""
