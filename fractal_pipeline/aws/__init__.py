"""Production on AWS: the Lambda render function, its Dagster-side backend, CloudFormation deploy/destroy.

- ``lambda_handler``: the render function itself. Imports only dagster-pipes, the
  core, the store and ``rendering`` (no Dagster), so its image stays small.
- ``lambda_backend``: the ``lambda`` render backend of ``RenderBackendResource``:
  chunks of specs invoked concurrently with ``PipesLambdaClient``.
- ``deploy`` / ``commands``: ``fractal-pipeline deploy`` and ``destroy`` (boto3 CloudFormation).

Nothing here is imported at package import time: each module is loaded where it is used.
"""
