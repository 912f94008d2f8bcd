"""Generated spec material shared by the benchmarks: an OpenAPI definition per API."""

from __future__ import annotations

import textwrap

DEFINITION = textwrap.dedent(
    """\
    openapi: 3.0.1
    info: {{title: {api}, version: "1.0"}}
    paths:
      /items:
        get:
          responses: {{"200": {{description: OK}}}}
          x-amazon-apigateway-integration:
            type: aws_proxy
            httpMethod: POST
            uri: {uri}
    """
)
URI = (
    "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/"
    "arn:aws:lambda:us-east-1:123456789012:function:{function}:${{stageVariables.lambdaAlias}}/invocations"
)


def openapi_definition(api: str, function: str) -> str:
    """A one-route definition whose Lambda integration names the alias through ``${stageVariables.lambdaAlias}``."""
    return DEFINITION.format(api=api, uri=URI.format(function=function))
