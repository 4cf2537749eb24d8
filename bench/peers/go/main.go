// go-peer: the gateway's semantics on net/http + franz-go, the compiled-language peer.
//
// POST /v1/elections/{election_id}/votes:
//   - verify the bearer JWT (HS256 or EdDSA, golang-jwt/v5) against the same JWKS file,
//     by kid, with the key's own algorithm only; sub, jti, exp required, aud = election;
//   - validate the body {"vote_id", "choice"} with the gateway's patterns;
//   - produce the gateway's msgpack event to votes.v1 (key = voter id, acks=all,
//     idempotent producer, lz4, the gateway's linger) and answer 202 only after the
//     delivery report; 503 problem+json when Kafka does not confirm.
//
// GOMAXPROCS is left at its default (all cores). Configured by PEER_* environment
// variables (bench/targets.py) and -addr.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

var (
	voteIDPattern    = regexp.MustCompile(`^[0-9A-Za-z-]{16,64}$`)
	candidatePattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

type key struct {
	alg      string
	material any
}

type jwk struct {
	Kid string `json:"kid"`
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	K   string `json:"k"`
	X   string `json:"x"`
}

func loadKeys(path string) (map[string]key, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	keys := make(map[string]key, len(doc.Keys))
	for _, k := range doc.Keys {
		switch k.Kty {
		case "oct":
			secret, err := base64.RawURLEncoding.DecodeString(k.K)
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", k.Kid, err)
			}
			keys[k.Kid] = key{"HS256", secret}
		case "OKP":
			x, err := base64.RawURLEncoding.DecodeString(k.X)
			if err != nil || k.Crv != "Ed25519" || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("key %s: bad Ed25519 key", k.Kid)
			}
			keys[k.Kid] = key{"EdDSA", ed25519.PublicKey(x)}
		default:
			return nil, fmt.Errorf("key %s: unsupported kty %q", k.Kid, k.Kty)
		}
	}
	return keys, nil
}

type server struct {
	keys       map[string]key
	client     *kgo.Client
	topic      string
	gatewayID  string
	receiptKey []byte
}

type voteIn struct {
	VoteID string `json:"vote_id"`
	Choice string `json:"choice"`
}

type voteAccepted struct {
	VoteID     string `json:"vote_id"`
	Status     string `json:"status"`
	Durability string `json:"durability"`
	ReceivedAt string `json:"received_at"`
	Receipt    string `json:"receipt"`
}

func problem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type": "about:blank", "title": title, "status": status, "detail": detail})
}

func (s *server) keyFunc(t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	k, ok := s.keys[kid]
	if !ok {
		return nil, errors.New("unknown_kid")
	}
	if t.Method.Alg() != k.alg {
		return nil, errors.New("alg_mismatch")
	}
	return k.material, nil
}

func (s *server) verify(token, election string) (string, int, error) {
	claims := jwt.RegisteredClaims{}
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{"HS256", "EdDSA"}),
		jwt.WithAudience(election),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(30*time.Second),
	)
	if _, err := parser.ParseWithClaims(token, &claims, s.keyFunc); err != nil {
		if errors.Is(err, jwt.ErrTokenInvalidAudience) {
			return "", http.StatusForbidden, err
		}
		return "", http.StatusUnauthorized, err
	}
	if claims.Subject == "" || claims.ID == "" {
		return "", http.StatusUnauthorized, errors.New("missing_claim")
	}
	return claims.Subject, 0, nil
}

// msgpack str and uint as in gateway/_fast/reference.py (encode_event).
func appendStr(b []byte, v string) []byte {
	n := len(v)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 0x100:
		b = append(b, 0xd9, byte(n))
	case n < 0x10000:
		b = append(b, 0xda, byte(n>>8), byte(n))
	default:
		b = append(b, 0xdb, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, v...)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 0x80:
		return append(b, byte(v))
	case v < 0x100:
		return append(b, 0xcc, byte(v))
	case v < 0x10000:
		return append(b, 0xcd, byte(v>>8), byte(v))
	case v < 0x100000000:
		return append(b, 0xce, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return append(b, 0xcf, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
		byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func encodeEvent(voteID, election, voter, choice string, atUs uint64, gatewayID string) []byte {
	b := make([]byte, 0, 192)
	b = append(b, 0x87)
	b = appendStr(b, "v")
	b = append(b, 0x01)
	b = appendStr(appendStr(b, "vote_id"), voteID)
	b = appendStr(appendStr(b, "election_id"), election)
	b = appendStr(appendStr(b, "voter_id"), voter)
	b = appendStr(appendStr(b, "choice"), choice)
	b = appendUint(appendStr(b, "received_at_us"), atUs)
	b = appendStr(appendStr(b, "gateway_id"), gatewayID)
	return b
}

func (s *server) receipt(election, voteID, voter, choice string, atUs uint64) string {
	mac := hmac.New(sha256.New, s.receiptKey)
	mac.Write([]byte(strings.Join(
		[]string{election, voteID, voter, choice, strconv.FormatUint(atUs, 10)}, "\x1f")))
	return "r1." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (s *server) vote(w http.ResponseWriter, r *http.Request) {
	election := r.PathValue("election")
	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") {
		problem(w, http.StatusUnauthorized, "missing bearer token", "")
		return
	}
	voter, status, err := s.verify(auth[len("Bearer "):], election)
	if err != nil {
		problem(w, status, "invalid token", err.Error())
		return
	}
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		problem(w, http.StatusUnsupportedMediaType, "expected application/json", "")
		return
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	if err != nil {
		problem(w, http.StatusRequestEntityTooLarge, "body too large", "")
		return
	}
	var in voteIn
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil || !voteIDPattern.MatchString(in.VoteID) ||
		!candidatePattern.MatchString(in.Choice) {
		problem(w, http.StatusBadRequest, "malformed vote", "")
		return
	}
	now := time.Now()
	atUs := uint64(now.UnixMicro())
	rec := &kgo.Record{Topic: s.topic, Key: []byte(voter),
		Value: encodeEvent(in.VoteID, election, voter, in.Choice, atUs, s.gatewayID)}
	done := make(chan error, 1)
	s.client.Produce(r.Context(), rec, func(_ *kgo.Record, err error) { done <- err })
	if err := <-done; err != nil {
		problem(w, http.StatusServiceUnavailable, "vote not durable", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(voteAccepted{
		VoteID: in.VoteID, Status: "accepted", Durability: "kafka",
		ReceivedAt: now.UTC().Format("2006-01-02T15:04:05.000000+00:00"),
		Receipt:    s.receipt(election, in.VoteID, voter, in.Choice, atUs),
	})
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18082", "listen address")
	flag.Parse()
	keys, err := loadKeys(env("PEER_JWKS_FILE", ".stack/keys/jwks.json"))
	if err != nil {
		log.Fatalf("go-peer: keys: %v", err)
	}
	receiptKey := make([]byte, 32)
	if path := os.Getenv("PEER_RECEIPT_KEY_FILE"); path != "" {
		if receiptKey, err = os.ReadFile(path); err != nil {
			log.Fatalf("go-peer: receipt key: %v", err)
		}
	}
	linger, err := strconv.ParseFloat(env("PEER_LINGER_MS", "2"), 64)
	if err != nil {
		log.Fatalf("go-peer: PEER_LINGER_MS: %v", err)
	}
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(env("PEER_KAFKA_BOOTSTRAP", "127.0.0.1:19092"), ",")...),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotent writes are franz-go's default
		kgo.ProducerBatchCompression(kgo.Lz4Compression()),
		kgo.ProducerLinger(time.Duration(linger*float64(time.Millisecond))),
		kgo.ClientID(env("PEER_GATEWAY_ID", "bench-go-peer")),
	)
	if err != nil {
		log.Fatalf("go-peer: kafka client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := client.Ping(ctx); err != nil {
		log.Fatalf("go-peer: kafka: %v", err)
	}
	cancel()
	s := &server{keys: keys, client: client, topic: env("PEER_TOPIC", "votes.v1"),
		gatewayID:  fmt.Sprintf("%s-%d", env("PEER_GATEWAY_ID", "bench-go-peer"), os.Getpid()),
		receiptKey: receiptKey}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/elections/{election}/votes", s.vote)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("go-peer: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	_ = client.Flush(ctx)
	cancel()
	client.Close()
}
