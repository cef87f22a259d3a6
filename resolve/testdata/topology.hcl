# A two-datacenter mesh with one peer, on loopback addresses.
topology {
  datacenter   = "dc1"
  trust_domain = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
  services = [
    { name = "api", addresses = ["127.0.1.10:21000"] },
    { name = "db", addresses = ["127.0.1.11:21000"] },
    { name = "api", datacenter = "secondary", addresses = ["127.0.2.10:21000"], wan_addresses = ["127.0.2.110:21000"] },
    { name = "db", datacenter = "secondary", addresses = ["127.0.2.11:21000"], wan_addresses = ["127.0.2.111:21000"] },
  ]
  gateways = [
    { datacenter = "dc1", addresses = ["127.0.1.5:8443"], wan_addresses = ["127.0.1.105:8443"] },
    { datacenter = "secondary", addresses = ["127.0.2.5:8443"], wan_addresses = ["127.0.2.105:8443"] },
  ]
  peers = [
    { name = "webstuff", trust_domain = "11111111-2222-3333-4444-555555555555.consul", name_at_peer = "dc1-default", gateways = ["127.0.3.5:8443"] },
  ]
}
