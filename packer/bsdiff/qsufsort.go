package bsdiff

// qsufsort is Larsson and Sadakane's suffix sort as bsdiff 4 and
// kr/binarydist implement it, with int32 indexes (half the memory).
func qsufsort(obuf []byte) []int32 {
	var buckets [256]int32
	n := int32(len(obuf))
	I := make([]int32, n+1)
	V := make([]int32, n+1)
	for _, c := range obuf {
		buckets[c]++
	}
	for i := 1; i < 256; i++ {
		buckets[i] += buckets[i-1]
	}
	copy(buckets[1:], buckets[:255])
	buckets[0] = 0
	for i, c := range obuf {
		buckets[c]++
		I[buckets[c]] = int32(i)
	}
	I[0] = n
	for i, c := range obuf {
		V[i] = buckets[c]
	}
	V[n] = 0
	for i := 1; i < 256; i++ {
		if buckets[i] == buckets[i-1]+1 {
			I[buckets[i]] = -1
		}
	}
	I[0] = -1
	for h := int32(1); I[0] != -(n + 1); h += h {
		var ln int32
		var i int32
		for i < n+1 {
			if I[i] < 0 {
				ln -= I[i]
				i -= I[i]
			} else {
				if ln != 0 {
					I[i-ln] = -ln
				}
				ln = V[I[i]] + 1 - i
				split(I, V, i, ln, h)
				i += ln
				ln = 0
			}
		}
		if ln != 0 {
			I[i-ln] = -ln
		}
	}
	for i := int32(0); i < n+1; i++ {
		I[V[i]] = i
	}
	return I
}

func split(I, V []int32, start, length, h int32) {
	var i, j, k, x, jj, kk int32
	if length < 16 {
		for k = start; k < start+length; k += j {
			j = 1
			x = V[I[k]+h]
			for i = 1; k+i < start+length; i++ {
				if V[I[k+i]+h] < x {
					x = V[I[k+i]+h]
					j = 0
				}
				if V[I[k+i]+h] == x {
					I[k+i], I[k+j] = I[k+j], I[k+i]
					j++
				}
			}
			for i = 0; i < j; i++ {
				V[I[k+i]] = k + j - 1
			}
			if j == 1 {
				I[k] = -1
			}
		}
		return
	}
	x = V[I[start+length/2]+h]
	for i = start; i < start+length; i++ {
		if V[I[i]+h] < x {
			jj++
		}
		if V[I[i]+h] == x {
			kk++
		}
	}
	jj += start
	kk += jj
	i = start
	for i < jj {
		if V[I[i]+h] < x {
			i++
		} else if V[I[i]+h] == x {
			I[i], I[jj+j] = I[jj+j], I[i]
			j++
		} else {
			I[i], I[kk+k] = I[kk+k], I[i]
			k++
		}
	}
	for jj+j < kk {
		if V[I[jj+j]+h] == x {
			j++
		} else {
			I[jj+j], I[kk+k] = I[kk+k], I[jj+j]
			k++
		}
	}
	if jj > start {
		split(I, V, start, jj-start, h)
	}
	for i = 0; i < kk-jj; i++ {
		V[I[jj+i]] = kk - 1
	}
	if jj == kk-1 {
		I[jj] = -1
	}
	if start+length > kk {
		split(I, V, kk, start+length-kk, h)
	}
}
