"""The reference storefront at `/demo`: a small page that uses the public API exactly as a merchant's frontend
would, served by `assetpay-merchant dev` only (`serve` never imports this package).

`static/` holds the page (plain HTML, one JS module, CSS: read `static/app.js`); `app.py` serves it next to the
one endpoint that plays the merchant platform's part in the demo.
"""
