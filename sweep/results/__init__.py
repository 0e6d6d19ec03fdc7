"""The results of a sweep: fronts, comparisons with the baselines, the figure, the tables and the report page."""
