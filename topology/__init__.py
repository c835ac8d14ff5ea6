"""The Faust wiring around the pure core in `streams`: app, topics, tables, agents, CLI."""
