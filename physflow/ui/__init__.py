"""What a person sees of a campaign: live progress, ``physflow watch``, the dashboard, ``init``."""
