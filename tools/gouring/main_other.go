//go:build !linux

package main

import "log"

func main() { log.Fatal("gouring: needs Linux (io_uring)") }
