"""physflow: hypothesis-driven simulation campaigns on supercomputers.

A campaign is a loop: think -> propose -> dispatch -> simulate -> stream back -> store -> think.
"""

__version__ = "0.1.0"
