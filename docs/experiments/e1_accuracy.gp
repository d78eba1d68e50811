set terminal pngcairo size 900,520 font 'Helvetica,11'
set output 'e1_accuracy.png'
set grid
set key outside right
set title 'Test accuracy (probe set) vs training steps, 3x100 sigmoid, batch 60'
set xlabel 'training step'; set ylabel 'test accuracy'
plot 'e1.dat' u 1:2 w l lw 2 t 'without BN', '' u 1:3 w l lw 2 t 'with BN'
