//go:build !linux

package main

import "log"

func main() { log.Fatal("goepoll: needs Linux (epoll)") }
