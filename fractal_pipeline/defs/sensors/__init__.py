"""The sensors: spec files uploaded to S3, the schedule's follow-up render, the collage's freshness."""
