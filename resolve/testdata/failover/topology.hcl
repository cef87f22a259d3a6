# Two datacenters on loopback: api in each, web in dc1.
topology {
  datacenter   = "dc1"
  trust_domain = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
  services = [
    { name = "api", addresses = ["127.0.1.10:21000"] },
    { name = "api", datacenter = "dc2", addresses = ["127.0.2.10:21000"], wan_addresses = ["127.0.2.110:21000"] },
  ]
  gateways = [
    { datacenter = "dc1", addresses = ["127.0.1.5:8443"], wan_addresses = ["127.0.1.105:8443"] },
    { datacenter = "dc2", addresses = ["127.0.2.5:8443"], wan_addresses = ["127.0.2.105:8443"] },
  ]
}
