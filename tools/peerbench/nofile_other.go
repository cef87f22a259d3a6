//go:build !unix

package main

// raiseNoFile does nothing where there is no open-file limit to raise.
func raiseNoFile() {}
