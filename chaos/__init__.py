"""Chaos run: a seeded scenario, a reference model from the pure domain, and a runner that
drives real worker processes through kills, a PostgreSQL outage and a broker restart."""
