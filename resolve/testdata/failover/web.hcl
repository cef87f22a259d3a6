service {
  name = "web"
  port = 8080
  connect {
    sidecar_service {
      proxy {
        upstreams = [{ destination_name = "api", local_bind_port = 9191, mesh_gateway { mode = "local" } }]
      }
    }
  }
}
