# Cluster A: it established the peering "cluster-b" with B's token, so it
# dials B's servers (through B's gateway), and imports B's "api".
topology {
  datacenter   = "dc1"
  trust_domain = "aaaaaaaa-0000-4000-8000-000000000001.consul"
  services = [
    { name = "web", addresses = ["127.0.10.1:21000"] },
  ]
  gateways = [
    { datacenter = "dc1", addresses = ["127.0.10.5:8443"] },
  ]
  servers = ["127.0.10.2:8503"]
  peers = [
    {
      name             = "cluster-b"
      trust_domain     = "bbbbbbbb-0000-4000-8000-000000000002.consul"
      name_at_peer     = "cluster-a"
      gateways         = ["127.0.20.5:8443"]
      server_name      = "server.dc1.peering.bbbbbbbb-0000-4000-8000-000000000002.consul"
      server_addresses = ["127.0.20.5:8443"]
      imports          = ["api"]
    },
  ]
}

