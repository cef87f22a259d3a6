Kind = "exported-services"
Name = "default"
Services = [
  { Name = "api", Consumers = [{ Peer = "cluster-a" }] },
  { Name = "quiet", Consumers = [{ Peer = "cluster-a" }] },
]
