"""The cluster's CAs and tokens, made once and kept safe in the state folder."""
