# Cluster B: it generated the token for "cluster-a", so it accepts A's
# servers, and it exports "api" to A (and "billing" to nobody).
topology {
  datacenter   = "dc1"
  trust_domain = "bbbbbbbb-0000-4000-8000-000000000002.consul"
  services = [
    { name = "api", addresses = ["127.0.20.10:21000", "127.0.20.11:21000"] },
    { name = "billing", addresses = ["127.0.20.12:21000"] },
    { name = "quiet" },
  ]
  servers = ["127.0.20.2:8503"]
  peers = [
    { name = "cluster-a", trust_domain = "aaaaaaaa-0000-4000-8000-000000000001.consul" },
  ]
}

