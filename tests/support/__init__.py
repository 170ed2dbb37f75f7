"""What the tiers' tests share: the bundled project and fixed secrets, the host's tools, and the
stand-ins and labs that play the programs and machines a test meets (each module says which)."""
