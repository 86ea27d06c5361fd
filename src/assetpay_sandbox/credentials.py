"""The sandbox's own merchant credentials: public, so that `dev` and the examples can use them out of the box.

They are published here, which is exactly why a served backend refuses them as secrets.
"""

SANDBOX_API_KEY = "ap_sandbox"
SANDBOX_API_SECRET = "sandbox-api-secret"  # noqa: S105
SANDBOX_MERCHANT_ID = "00000000-0000-4000-8000-000000005a4d"
