"""Running tasks somewhere else: the layer between the site data and the campaign.

``base`` declares what every dispatcher does, ``backends`` picks one for a site, and the two
backends are ``parsl_backend`` (pools this process starts, from ``parsl_config``) and
``globus_backend`` (a Globus Compute endpoint, whose config ``endpoint_config`` writes). The
worker side is ``payload``; ``retry`` says which failed tries Parsl runs again.
"""
