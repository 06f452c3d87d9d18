"""Operating the service: alerts to the team's chat webhook, Prometheus metrics, backups of the embedded store."""
