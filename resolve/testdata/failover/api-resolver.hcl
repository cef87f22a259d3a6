# When api has no healthy instance in dc1, its connections go to dc2.
Kind = "service-resolver"
Name = "api"
Failover = {
  "*" = { Datacenters = ["dc2"] }
}
