"""The API edge: routes, authentication, and the one place that maps errors to HTTP statuses."""
