"""Alembic migrations, shipped inside the package. Run them with `saascore db upgrade`."""
