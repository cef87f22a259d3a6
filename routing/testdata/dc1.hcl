# dc1's gateway in two WAN-federated datacenters: its own servers, and dc2's
# gateways (from the federation states, in Consul).
topology {
  datacenter   = "dc1"
  trust_domain = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"
  wan_federation {
    servers = [
      { node = "dc1-server-1", address = "127.0.1.2:8300" },
      { node = "dc1-server-2", address = "127.0.1.3:8300" },
      { node = "ip-10-0-1-4.ec2.internal", address = "127.0.1.4:8300" },
    ]
  }
  services = [{ name = "api", addresses = ["127.0.1.10:21000"] }]
  gateways = [
    { datacenter = "dc1", addresses = ["127.0.1.5:8443"], wan_addresses = ["127.0.1.105:8443"] },
    { datacenter = "dc2", addresses = ["127.0.2.5:8443"], wan_addresses = ["127.0.2.105:8443"] },
  ]
}
