set terminal pngcairo size 900,520 font 'Helvetica,11'
set output 'e2_drift.png'
set grid
set key outside right
set title 'Mean over units of |batch-norm input mean| (1000 test images)'
set xlabel 'training step'; set ylabel '|mean|'; set logscale y
plot 'e2.dat' u 1:6 w l lw 2 t 'true, layer 1', '' u 1:8 w l lw 2 t 'true, layer 2', '' u 1:10 w l lw 2 t 'true, layer 3', '' u 1:12 w l lw 2 dt 2 t 'frozen, layer 1', '' u 1:14 w l lw 2 dt 2 t 'frozen, layer 2', '' u 1:16 w l lw 2 dt 2 t 'frozen, layer 3'
