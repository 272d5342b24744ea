"""Fixtures of the scale-out tests: MariaDB as the shadow tests check for it."""

from tests.shadow.conftest import mariadb

__all__ = ["mariadb"]
