//go:build !unix

package handover

import "context"

func (p *Process) inherit() error { return nil }

func (p *Process) upgrade(context.Context, []Listener) error { return ErrNotSupported }
