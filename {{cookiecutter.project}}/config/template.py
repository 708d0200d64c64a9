"""The version of the platform template this service was generated from, or last
updated to: written at generation, and changed by `cruft update` with the rest of the
template's files. Never edit it by hand.

django_build_info carries both as labels, django_template_commit_timestamp_seconds
the date as a number (core.metrics), and the image's labels repeat them (Dockerfile).
"""

from datetime import datetime

# `git describe` of the template's commit (its latest tag, the commits since and
# the commit, or the commit alone); "unknown" if the template was no git checkout.
VERSION = "{{ cookiecutter.__template_version }}"
# The commit's time, UTC, ISO 8601: services sort by it, which versions cannot do.
DATE = "{{ cookiecutter.__template_date }}"
# The same time in seconds since the epoch, for Prometheus to compute with; 0 when
# unknown, so that a service of unknown template sorts as the furthest behind.
TIMESTAMP = 0.0 if DATE == "unknown" else datetime.fromisoformat(DATE).timestamp()
