"""The team's tools, run as console scripts (pyproject's ``[project.scripts]``): the
demo, the leaderboard, the offline plots page, the tracking server, Ray sweeps, and the
whole params tree for benchmarks and tests. May import any room; no room imports it.
"""
