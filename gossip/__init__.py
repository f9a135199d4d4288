"""SWIM gossip membership (issue 3). Empty until then."""
