package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/test/cardsim"
)

// firstTokenHTTP streams a chat through the gateway and returns the time
// from sending the request to the first SSE chunk with text.
func firstTokenHTTP(b *testing.B, base string, body []byte) time.Duration {
	start := time.Now()
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var first time.Duration
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if first == 0 && strings.Contains(sc.Text(), `"content":"`) && !strings.Contains(sc.Text(), `"content":""`) {
			first = time.Since(start)
		}
	}
	if first == 0 || resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d, no text streamed", resp.StatusCode)
	}
	return first
}

// firstTokenNATS runs the same chat with the Go client and returns the time
// from the call to its first token event.
func firstTokenNATS(b *testing.B, c *client.Client, job func() *schema.ChatJob) time.Duration {
	start := time.Now()
	var first time.Duration
	_, err := c.Chat(context.Background(), job(), func(ev schema.Event) error {
		if first == 0 && ev.Type == schema.EventToken && ev.Text != "" {
			first = time.Since(start)
		}
		return nil
	})
	if err != nil || first == 0 {
		b.Fatalf("chat: %v (first token %v)", err, first)
	}
	return first
}

func p50(d []time.Duration) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[len(s)/2].Microseconds()) / 1000
}

// BenchmarkGatewayFirstToken: in one run against kiln up on the simulated
// card, the time to the first streamed token over HTTP (SSE, through the
// gateway) and with the Go client on NATS, alternately; the difference
// of the p50s is what the gateway adds.
func BenchmarkGatewayFirstToken(b *testing.B) {
	u, base := startGateway(b, 3, "--models", gatewayModels(b, false), "--lib", cardsim.Library(b))
	c := kilnClient(b, u.url, "")
	body := []byte(`{"model":"qwen3-tiny","stream":true,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`)
	job := func() *schema.ChatJob {
		return &schema.ChatJob{JobHeader: schema.JobHeader{Model: "qwen3-tiny"}, MaxTokens: 4,
			Messages: []schema.Message{{Role: "user", Content: "hi"}}}
	}
	var viaHTTP, viaNATS []time.Duration
	for b.Loop() {
		viaHTTP = append(viaHTTP, firstTokenHTTP(b, base, body))
		viaNATS = append(viaNATS, firstTokenNATS(b, c, job))
	}
	b.ReportMetric(p50(viaHTTP), "http-first-token-p50-ms")
	b.ReportMetric(p50(viaNATS), "nats-first-token-p50-ms")
	b.ReportMetric(p50(viaHTTP)-p50(viaNATS), "gateway-adds-p50-ms")
}

// BenchmarkGatewayRequests: requests per second of whole (not streamed)
// one-token chats from 32 concurrent callers, through the gateway and
// with the Go client, on four simulated cards in no-compute mode (the
// cards are not the limit; the queue's sync-to-disk is).
func BenchmarkGatewayRequests(b *testing.B) {
	b.Setenv("KILN_SIM_DEVICES", "1,3,5,7")
	b.Setenv("KILN_SIM_NOCOMPUTE", "1")
	addr := freeAddr(b)
	base := "http://" + addr
	u := startUp(b, "--gateway", addr, "--models", gatewayModels(b, false), "--lib", cardsim.Library(b))
	waitStatus(b, u.url, func(st *fleetStatus) bool {
		ready := 0
		for _, w := range st.Workers {
			if w.State == schema.StateReady {
				ready++
			}
		}
		return ready == 4
	})
	c := kilnClient(b, u.url, "")
	body := []byte(`{"model":"qwen3-tiny","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}`)
	const callers, perCaller = 32, 16
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: callers}} // each caller keeps its connection
	run := func(one func() error) float64 {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for range callers {
			wg.Go(func() {
				for range perCaller {
					if err := one(); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		return callers * perCaller / time.Since(start).Seconds()
	}
	var httpRPS, natsRPS []float64
	for b.Loop() {
		httpRPS = append(httpRPS, run(func() error {
			resp, err := hc.Post(base+"/v1/chat/completions", "application/json", bytes.NewReader(body))
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}))
		natsRPS = append(natsRPS, run(func() error {
			_, err := c.Chat(context.Background(), &schema.ChatJob{JobHeader: schema.JobHeader{Model: "qwen3-tiny"}, MaxTokens: 1,
				Messages: []schema.Message{{Role: "user", Content: "hi"}}}, nil)
			return err
		}))
	}
	slices.Sort(httpRPS)
	slices.Sort(natsRPS)
	b.ReportMetric(httpRPS[len(httpRPS)/2], "http-req/s")
	b.ReportMetric(natsRPS[len(natsRPS)/2], "nats-req/s")
}
