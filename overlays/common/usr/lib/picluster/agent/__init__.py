"""picluster's first-boot agent: prepares a node and brings it into the cluster.

Standard library only (plus python3-requests, which the image carries), because it runs on the
node. Each step is a module with one job: preflight, links, packages, api (the readiness wait),
join; `state` keeps the record that `picluster-agent status` prints.
"""
