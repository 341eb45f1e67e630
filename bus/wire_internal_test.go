package bus

import (
	"reflect"
	"testing"
)

// FuzzDecodeFastMatchesSlow: wherever the fast decoder answers, it answers
// exactly as the general one.
func FuzzDecodeFastMatchesSlow(f *testing.F) {
	for _, s := range []string{`{"userId":"u"}`, `{"userIds":["a","b","a"]}`, ` { "userIds" : [ "a" , "*" ] } `, `{"userIds":["a"],"x":1}`,
		`{"userId":""}`, `{"userIds":["a b","ok"]}`, `{"userIds":[]}`, `{"userIds":["a","b","c","d"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodeFast(data, 3)
		if !ok {
			return
		}
		slow, err := decodeSlow(data, 3)
		if err != nil {
			t.Fatalf("fast accepted what slow refuses (%v): %q", err, data)
		}
		if len(fast.IDs) == 0 && len(slow.IDs) == 0 {
			fast.IDs, slow.IDs = nil, nil
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("input %q:\nfast %+v\nslow %+v", data, fast, slow)
		}
	})
}

func BenchmarkDecodeSingle(b *testing.B) {
	data := []byte(`{"userId":"user-123456"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRequest(data, 10000); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeBatch100(b *testing.B) {
	data := []byte(`{"userIds":[`)
	for i := range 100 {
		if i > 0 {
			data = append(data, ',')
		}
		data = append(data, []byte(`"user-`+string(rune('a'+i%26))+string(rune('a'+i/26))+`-00"`)...)
	}
	data = append(data, ']', '}')
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := DecodeRequest(data, 10000); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeSlowBatch100(b *testing.B) {
	data := []byte(`{"userIds":[`)
	for i := range 100 {
		if i > 0 {
			data = append(data, ',')
		}
		data = append(data, []byte(`"user-`+string(rune('a'+i%26))+string(rune('a'+i/26))+`-00"`)...)
	}
	data = append(data, ']', '}')
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := decodeSlow(data, 10000); err != nil {
			b.Fatal(err)
		}
	}
}
