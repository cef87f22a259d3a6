package consulview_test

import (
	"fmt"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/meshgate/meshgate/consulview"
	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/meshgate/meshgate/routing"
	"github.com/meshgate/meshgate/sni"
	"github.com/stretchr/testify/require"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkConsulCatalog10k follows a real agent's catalog of 10,000
// services (each with a sidecar) and reports: the agent connections held at
// most, the first load's time, the time from a registration to a routable
// SNI, the heap the view takes, and the CPU spent per change. Run it with
//
//	go test -run '^$' -bench ConsulCatalog10k -benchtime 1x ./consulview/
func BenchmarkConsulCatalog10k(b *testing.B) {
	const services = 10000
	agent := consultest.Start(b, consultest.Options{})
	td := agent.TrustDomain()
	registerMany(b, agent.Client, "svc", services, true)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	var cc connCounter
	for b.Loop() {
		start := time.Now()
		src := newConsul(b, cc.client(b, agent.HTTPAddr), consulview.Options{})
		firstLoad := time.Since(start)
		router := &routing.MeshRouter{Source: src}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)

		const changes = 20
		cpu0 := cpuTime()
		var total time.Duration
		for i := range changes {
			name := "late" + strconv.Itoa(i)
			t0 := time.Now()
			registerMany(b, agent.Client, name, 1, false)
			sniName := sni.ServiceSNI(name+"-00000", "", "", "", "dc1", td)
			for {
				if got, _ := routeReason(router, sniName); len(got) == 1 {
					break
				}
				if time.Since(t0) > time.Minute {
					b.Fatalf("%s never routed", name)
				}
				time.Sleep(time.Millisecond)
			}
			total += time.Since(t0)
		}
		cpu := cpuTime() - cpu0

		// A check flapping among 10,000 passing ones: one sidecar's check
		// goes critical (its service is no longer routed), then passing.
		const flaps = 10
		cpu1 := cpuTime()
		for i := range flaps {
			svc := fmt.Sprintf("svc-%05d", i)
			node := fmt.Sprintf("svc-node-%d", i/50)
			sniName := sni.ServiceSNI(svc, "", "", "", "dc1", td)
			for _, status := range []string{api.HealthCritical, api.HealthPassing} {
				ok, resp, _, err := agent.Client.Txn().Txn(api.TxnOps{checkOp(node, svc, status)}, nil)
				require.True(b, err == nil && ok, "%v %v", err, resp)
				for t0 := time.Now(); ; time.Sleep(time.Millisecond) {
					got, _ := routeReason(router, sniName)
					if (len(got) == 1) == (status == api.HealthPassing) {
						break
					}
					if time.Since(t0) > time.Minute {
						b.Fatalf("%s never became %s", svc, status)
					}
				}
			}
		}
		flapCPU := cpuTime() - cpu1
		b.ReportMetric(float64(src.Stats().Services), "services")
		b.ReportMetric(float64(cc.max.Load()), "agent-conns-max")
		b.ReportMetric(firstLoad.Seconds(), "first-load-s")
		b.ReportMetric(float64(total.Milliseconds())/changes, "register-to-route-ms")
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/(1<<20), "view-heap-MiB")
		b.ReportMetric(float64(cpu.Milliseconds())/changes, "cpu-ms/change")
		b.ReportMetric(float64(flapCPU.Milliseconds())/(2*flaps), "cpu-ms/check-change")
		src.Close()
	}
}
