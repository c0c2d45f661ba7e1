"""The built-in rewrite prompts (``distill.template: general | math``); a package only to ship them."""
